"""A .keras file read before Keras loads it: the modules its layers come from imported (so
that Keras finds their classes), and a vocabulary Keras would read back wrong refused."""

from __future__ import annotations

import importlib
import re
import zipfile

from daskinfer.errors import ModelLoadError, this_worker

_OWN_MODULES = {"keras", "builtins", "tensorflow", "numpy"}  # Keras finds these itself


def import_modules_of(path: str) -> None:
    """Import the modules whose classes a .keras file names (keras_hub's, a user's own package
    and its submodules): a class registered in probepkg.layers is known to Keras only once
    probepkg.layers, not just probepkg, is imported. A package this worker lacks is named in
    one line."""
    try:
        with zipfile.ZipFile(path) as archive:
            config = archive.read("config.json").decode("utf-8")
    except (OSError, KeyError, zipfile.BadZipFile):
        return  # not a .keras archive: Keras' own loader says what is wrong
    modules = set(re.findall(r'"module":\s*"([\w.]+)"', config))
    for module in sorted(m for m in modules if m.split(".", 1)[0] not in _OWN_MODULES | {"__main__"}):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            missing = getattr(exc, "name", None) or module.split(".", 1)[0]
            package = missing.split(".", 1)[0]
            if missing != package:  # the package is there, without the module the model names
                raise ModelLoadError(f"the model needs the Python module '{missing}', which the '{package}' of "
                                     f"{this_worker()} lacks: install the version the model was saved with on every "
                                     "worker") from None
            raise ModelLoadError(
                f"the model needs the Python package '{package}', which {this_worker()} lacks: install it on every "
                f"worker (e.g. pip install {package.replace('_', '-')})") from None


# What str.splitlines() splits at besides "\n": Keras joins a vocabulary with "\n" and reads it back
# with splitlines(), so a token holding one of these loads as two, every later index shifts by
# one, and the model scores with the wrong words, or fails on a "repeated term" with no hint.
_LINE_BREAKS = "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def check_vocabularies(path: str) -> None:
    """A .keras file whose saved vocabulary Keras would read back wrong is refused in one line,
    rather than loaded to give other scores than the model gave when it was saved."""
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if name.startswith("assets/") and name.endswith("/vocabulary.txt"):
                text = archive.read(name).decode("utf-8", "replace")
                found = next((c for c in text if c in _LINE_BREAKS), None)
                if found:
                    raise ModelLoadError(
                        f"a token of its vocabulary ({name}) holds U+{ord(found):04X}, which Keras reads back as a line "
                        "break: the vocabulary would load shifted and the scores be wrong; replace such characters in "
                        "the text before adapt(), and save the model again")
