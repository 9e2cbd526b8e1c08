"""Build of the one compiled extension, snapdiff._core.

Metadata lives in pyproject.toml; this file only describes the extension.
Set SNAPDIFF_DEBUG=1 for a -O0 build with AddressSanitizer and UBSan.
"""

import glob
import os
import sys

from setuptools import Extension, setup


def _need_header(header: str, package: str) -> None:
    for d in ("/usr/include", "/usr/local/include"):
        if os.path.exists(os.path.join(d, header)):
            return
    sys.exit(f"error: {header} not found: install the Debian package '{package}' "
             f"(apt-get install {package}) and build again")


_need_header("xxhash.h", "libxxhash-dev")

debug = os.environ.get("SNAPDIFF_DEBUG") == "1"
cflags = ["-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fvisibility=hidden",
          "-D_GNU_SOURCE", "-D_FILE_OFFSET_BITS=64", "-pthread"]
ldflags = ["-pthread"]
if debug:
    cflags += ["-O0", "-g", "-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
    ldflags += ["-fsanitize=address,undefined"]
else:
    cflags += ["-O2"]

ext = Extension(
    "snapdiff._core",
    sources=["snapdiff/_core.pyx"] + sorted(glob.glob("csrc/*.c")),
    include_dirs=["csrc"],
    libraries=["xxhash"],
    extra_compile_args=cflags,
    extra_link_args=ldflags,
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
)

from Cython.Build import cythonize  # noqa: E402

setup(ext_modules=cythonize([ext], language_level=3,
                            compiler_directives={"boundscheck": False, "wraparound": False}))
