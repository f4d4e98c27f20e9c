"""vecarc: archive text as memory vectors of a frozen language model.

    import vecarc
    vecarc.pack(["notes.txt"], "notes.vec")
    vecarc.verify("notes.vec").ok
    vecarc.unpack("notes.vec", "out/")
"""

import os

# libgomp's idle workers spin 300,000 rounds after each torch operation, on the cores that the compiled integer
# loops' threads take next: 10,000 makes a coded pack ~20 % faster and predicted chunks no slower
# (docs/benchmarks.md). Read once, when torch loads libgomp; a setting of the user's own stays.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

from .api import cat, pack, pack_documents, summary, unpack, verify
from .capacity import calibrate
from .config import PackConfig
from .engine import RayEngine
from .errors import VecarcError, VerificationError
from .format import Archive, read_archive
from .models import LoadedModel, load_model
from .search import SearchSettings
from .version import __version__

__all__ = [
    "Archive", "LoadedModel", "PackConfig", "RayEngine", "SearchSettings", "VecarcError", "VerificationError",
    "__version__", "calibrate", "cat", "load_model", "pack", "pack_documents", "read_archive", "summary", "unpack",
    "verify",
]
