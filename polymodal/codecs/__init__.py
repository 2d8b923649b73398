"""The byte-level floor: every decode of a container, a stream, an image header, an array or a
point-cloud file, with its bounds checked before anything is allocated.

PyAV, numpy and Pillow only. No torch, and nothing from the rest of polymodal: adapters,
preprocessing ops, `inspect` and `preview` stand on this package, so a preprocessing worker
stays light and a fix to a decoder lands once (`tests/test_layers.py` holds us to it).
"""
