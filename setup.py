"""Build of the optional native PAN engine; everything else is in setup.cfg.

The extension (addons/pan/_pannative.c, plain C against the CPython API) is
optional: without a C compiler, or if it fails to build, the install still
succeeds and pangate runs the Python engine (pangate.pan.engine.ENGINE says
which one runs; PANGATE_ENGINE=python|native|auto chooses).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "pangate.pan._pannative",
            sources=["addons/pan/_pannative.c"],
            optional=True,
            extra_compile_args=["-O2", "-std=c99", "-Wall"],
        )
    ]
)
