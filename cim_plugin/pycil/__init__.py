"""Everything that imports or patches PyCIL: finding and importing it, PyCIL's learner table and devices
(:mod:`.host`), its module constants (:mod:`.constants`), the learners the plug-in knows, one file each
(:mod:`.learners`: supported or refused, inner loss, hooks, der_p and lucir), the CIM mixin (:mod:`.mixin`)
and its data-manager and loader wrappers, the runner and CLI.

Importing this package does not import PyCIL; :func:`import_pycil` does.
"""

from .constants import check_constant_overrides, learner_modules, module_constants, overridden
from .host import (
                   LEARNERS,
                   SUBMODULE_FIX,
                   PyCILMissing,
                   import_pycil,
                   learner_class,
                   patched,
                   pycil_available,
                   pycil_dir,
                   resolve_devices,
)
from .learners import REFUSED, SUPPORTED, LearnerSpec, learner_spec, register

__all__ = ["SUBMODULE_FIX", "PyCILMissing", "pycil_dir", "pycil_available", "import_pycil", "LEARNERS",
           "learner_class", "learner_modules", "module_constants", "check_constant_overrides", "overridden",
           "resolve_devices", "patched", "LearnerSpec", "register", "learner_spec", "SUPPORTED", "REFUSED"]
