"""The browser side (Pyodide only): everything that talks to JavaScript.

* :mod:`.livekit`: :class:`LiveKitProvider`, the livekit-client ``Room``, the motion track's
  transform, the avatar's audio, the microphone.
* :mod:`.jsutil` and ``js/``: the JavaScript the provider evaluates in the page.
* :mod:`.jsrenderer`: a renderer written in JavaScript, called like a Python one.

Importing this package needs no browser; calling into it does (docs/platform.md).
"""
