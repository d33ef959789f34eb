"""The worker's side of the room: what carries the avatar's audio and motion into LiveKit.

- :mod:`~avatar_worker.transport.publisher` the LiveKit connection and publications
  (:class:`~avatar_worker.transport.publisher.Publisher`), built from
  :mod:`~avatar_worker.transport.rejoin` (staying in the room),
  :mod:`~avatar_worker.transport.tracks` (the audio and motion tracks, capture) and
  :mod:`~avatar_worker.transport.dataqueue` (data messages, queued and pumped)
- :mod:`~avatar_worker.transport.pacing` the absolute-deadline 25 fps clock
- :mod:`~avatar_worker.transport.streamer` the real-time loop (heartbeats, turns, send log, stats)
- :mod:`~avatar_worker.transport.carrier` the data-packet carrier and the control messages asking for it
- :mod:`~avatar_worker.transport.messaging` data messages: the transport interface, logged JSON messages
- :mod:`~avatar_worker.transport.republish` replacing the motion track mid-turn

Importing this package loads nothing of the LiveKit SDK; :mod:`~avatar_worker.transport.publisher` does.
"""
