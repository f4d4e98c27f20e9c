"""The chunk kinds, one module each, and the table that says which does what.

Each mode's module computes chunks on pack (`compute`, handing over ChunkRecords that
the journal and the Ray engine carry as they are), makes a record its header entry
(`settle`) and names what unpack decodes greedily (`greedy_jobs`). A new kind adds a
module here, a row below, the format's kind table and its section of docs/format.md.
"""

from . import coded, literal, predicted, vectors
from .record import OUTCOMES, ChunkRecord, Hooks, Item, Settled, Tag

MODES = {"coded": coded, "predict": predicted, "vectors": vectors}  # how pack computes a mode's chunks
SETTLE = {"vector": vectors.settle, "predicted": predicted.settle, "coded": coded.settle,  # by outcome
          "tokens": literal.settle}  # by outcome
GREEDY = (vectors, predicted)  # the kinds the model decodes, in the order unpack decodes them

__all__ = ["GREEDY", "MODES", "OUTCOMES", "SETTLE", "ChunkRecord", "Hooks", "Item", "Settled", "Tag", "coded",
           "literal",
           "predicted", "vectors"]
