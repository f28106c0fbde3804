"""The engine: the one road to the model. Its interface and payload types (interface.py), the model card the server
checks requests against (card.py), the tensor work (inference.py, imported only where the model runs), and the two
implementations: in a child process (process.py, child.py, wire.py) or in a thread (thread.py)."""
