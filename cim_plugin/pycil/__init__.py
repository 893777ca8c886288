"""Everything that imports or patches PyCIL: the learner registry, module constants and devices
(:mod:`.host`), the CIM mixin (:mod:`.mixin`) and its data-manager and loader wrappers, each learner's
inner loss, the runner and CLI, and ``der_p`` (DER with channel masks and pruning).

Importing this package does not import PyCIL; :func:`import_pycil` does.
"""

from .host import *  # noqa: F401,F403  (the registry's names: `from cim_plugin.pycil import learner_class`)
from .host import REPO_ROOT, SUBMODULE_FIX, _ARG_KEY  # noqa: F401
