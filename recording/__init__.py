"""Call recording for Asterisk: the domain, its storage, and its front doors (FastAGI now; the
HTTP recording API over AMI beside it)."""

__version__ = "0.1.0"

# NOTE: temporary, for the commit that moves the modules into their wings without editing
# them (so `git log --follow` sees pure renames). Each old name, and each sibling-relative
# name a moved module still uses, resolves to the module's new home. The next commit points
# every import at the wings and removes this.
import importlib
import importlib.abc
import importlib.machinery
import sys

_HOMES = {
    "fastagi": "doors", "http": "doors", "openapi": "doors", "sweeper": "doors",
    "store": "storage", "hotpath": "storage", "persist": "storage", "journal": "storage",
    "batching": "storage", "models": "storage", "directory": "storage",
    "ami": "asterisk", "manager": "asterisk",
    "config": "ops", "configfile": "ops", "check": "ops", "dialplan": "ops", "metrics": "ops",
    "logs": "ops", "gate": "ops", "access": "ops", "workers": "ops", "eventloop": "ops",
    "domain": "", "service": "", "errors": "", "apikey": "", "app": "", "cli": "",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        parts = fullname.split(".")
        if parts[0] != "recording" or len(parts) < 2 or parts[-1] not in _HOMES:
            return None
        home = _HOMES[parts[-1]]
        real = ".".join(["recording", home, parts[-1]] if home else ["recording", parts[-1]])
        if real == fullname:
            return None
        return importlib.machinery.ModuleSpec(fullname, self, origin=real)

    def create_module(self, spec):
        return importlib.import_module(spec.origin)

    def exec_module(self, module):
        pass


sys.meta_path.insert(0, _Alias())
