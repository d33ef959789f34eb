"""Audio: PCM in one place (:mod:`~avatar_worker.audio.pcm`: 48 kHz mono int16 frames, WAV,
espeak-ng, envelopes, and the streaming converter from any rate and channel count), voice activity
detection (:mod:`~avatar_worker.audio.vad`) and the report of what the others say
(:mod:`~avatar_worker.audio.report`).
"""
