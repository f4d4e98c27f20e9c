"""The integer model: a Llama-family forward pass in exact integer arithmetic (model.py, ops.py, tables.py),
and the same stages as compiled loops (fast.py, native.cpp). docs/format.md ("Integer model") specifies it."""
