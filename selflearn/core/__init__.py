"""The pure core: what the pipeline's data *means*, as plain functions over pandas frames,
Arrow batches and numpy arrays. Nothing here starts Spark, reads a file a stage wrote or
knows the ROOT layout, so every rule is testable alone (tests/test_<module>.py).

In the order one utterance meets them: text, keys, privacy (a turn's key), defects (did it
fail?), rephrase and sessions (was the next turn a re-ask?), transitions and graph (the
absorbing chain over keys), paraphrase (cross-user clusters), rewrites and patterns (what
to publish, by named rules), labels (weak labels), controls (the operator's file),
rewrite_apply (contract 4.1: how a runtime applies rewrites and patterns).
"""
