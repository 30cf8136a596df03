"""The model zoo: every architecture registers itself by name when its module is imported.

    from export.models import build_model, get_model_spec, list_models
    model = build_model("lenet5", num_classes=10)

To add an architecture: write one module here whose builder is decorated with `register_model`,
and add one import line below.
"""

from export.models.registry import InputSpec, ModelSpec, build_model, get_model_spec, list_models, register_model

# Each import registers its builders (the import is the registration).
from export.models import simple_cnn  # noqa: F401,E402
from export.models import bn_cnn  # noqa: F401,E402
from export.models import lenet5  # noqa: F401,E402
from export.models import flowers_cnn  # noqa: F401,E402
from export.models import torchvision_zoo  # noqa: F401,E402
from export.models import lecture_alexnet  # noqa: F401,E402
from export.models import lecture_vgg  # noqa: F401,E402
from export.models import lecture_googlenet  # noqa: F401,E402
from export.models import lecture_resnet  # noqa: F401,E402
from export.models import gap_cnn  # noqa: F401,E402
from export.models import fcn  # noqa: F401,E402
from export.models import yolo_grid  # noqa: F401,E402

__all__ = ["InputSpec", "ModelSpec", "build_model", "get_model_spec", "list_models", "register_model"]
