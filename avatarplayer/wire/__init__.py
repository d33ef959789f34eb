"""What crosses the wire, and nothing else (pure Python, no browser needed).

* :mod:`.motion`: motion packets (header, flags, compression) and the VP8 carrier frame.
* :mod:`.messages`: the protobuf ``Message`` inside a packet body (FLAME parameters).
* :mod:`.datamsg`: data-channel messages (topics, agent status, transcripts, the guarded JSON parser).
* :mod:`.compact`: the header the transform worker puts before each packet it posts to Python.

The contract is docs/wire-format.md.
"""
