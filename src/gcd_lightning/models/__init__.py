"""Classifier architectures. Each takes pixels already normalised by ``Normalize``."""

from gcd_lightning.models.external import external_classifier
from gcd_lightning.models.normalize import Normalize, normalized
from gcd_lightning.models.pixelcnn import PixelCNN
from gcd_lightning.models.resnet import resnet152, wide_resnet50_2
from gcd_lightning.models.small_cnn import SmallCNN
from gcd_lightning.models.vgg import VGG11BN

# the functions that build a network (the others are classes): what a shared defense folder may name (defense.trust)
BUILDERS = (external_classifier, resnet152, wide_resnet50_2)

__all__ = ["BUILDERS", "Normalize", "PixelCNN", "SmallCNN", "VGG11BN", "external_classifier", "normalized", "resnet152", "wide_resnet50_2"]
