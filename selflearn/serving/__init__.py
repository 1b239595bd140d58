"""The consumers' side: `Rewriter` applies a published run's rewrites and patterns in a
request path (contract 4.1 and 5), `server` serves it over HTTP (`selflearn serve`), and
`export` writes training/ for a Rasa or Hugging Face trainer."""
from selflearn.serving.rewriter import Rewriter, RunRefused, load_run

__all__ = ["Rewriter", "RunRefused", "load_run"]
