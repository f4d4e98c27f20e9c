"""vecarc: archive text as memory vectors of a frozen language model.

    import vecarc
    vecarc.pack(["notes.txt"], "notes.vec")
    vecarc.verify("notes.vec").ok
    vecarc.unpack("notes.vec", "out/")
"""

__version__ = "0.1.0"

from .api import pack, pack_documents, summary, unpack, verify  # noqa: E402
from .capacity import calibrate  # noqa: E402
from .engine import RayEngine  # noqa: E402
from .errors import VecarcError, VerificationError  # noqa: E402
from .format import Archive, read_archive  # noqa: E402
from .models import LoadedModel, load_model  # noqa: E402
from .search import CramSettings  # noqa: E402

__all__ = [
    "Archive", "CramSettings", "calibrate", "LoadedModel", "RayEngine", "VecarcError", "VerificationError",
    "load_model", "pack", "pack_documents", "read_archive", "summary", "unpack", "verify",
]
