__version__ = "0.1.0"

from selflearn.core.text import normalize_text

__all__ = ["normalize_text", "__version__"]
