"""Local outputs of a stream: a virtual camera, a video file, a preview window.

``streamgen camera`` shows its stream on this machine through these sinks.
Each sink is one small class with the :class:`~streamgen.outputs.sink.FrameSink`
interface (``write`` a picture, ``close``); :class:`~streamgen.outputs.pump.SinkPump`
feeds them on a thread of their own, so an encoder or a device never blocks
the event loop. :mod:`streamgen.outputs.spec` turns ``--output`` values into
sinks and checks, before a model loads, that each can work here (a virtual
camera device exists, a window can open, a file can be written).

Optional libraries (pyvirtualcam, tkinter) are imported only when their sink
is asked for, and this package imports nothing itself: the preview window's
process (:mod:`streamgen.outputs.preview`) starts without numpy or PyAV.
"""
