"""The small configurations of every zoo family that the model tests run (CPU and GPU)."""

# (name, build options, output shape for a batch of 2): small inputs keep the CPU run fast.
SMALL = [
    ("linear-regression", dict(in_features=5), (2, 1)),
    ("mlp", dict(in_channels=1, input_size=8, num_classes=10), (2, 10)),
    ("mlp", dict(in_features=20, num_classes=4, batchnorm=True, dropout=0.2), (2, 4)),
    ("lenet5", dict(input_size=28), (2, 10)),
    ("lenet5", dict(in_channels=3, input_size=32, num_classes=7), (2, 7)),
    ("small-cnn", dict(input_size=8), (2, 10)),
    ("small-cnn", dict(input_size=28, width=8, batchnorm=False, dropout=0.25), (2, 10)),
    ("alexnet", dict(num_classes=10, input_size=64), (2, 10)),
    ("vgg11", dict(num_classes=10, input_size=32), (2, 10)),
    ("vgg11_bn", dict(num_classes=10, input_size=32), (2, 10)),
    ("vgg16", dict(num_classes=10, input_size=32), (2, 10)),
    ("vgg16_bn", dict(num_classes=10, input_size=32), (2, 10)),
    ("squeezenet1_0", dict(num_classes=10, input_size=64), (2, 10)),
    ("squeezenet1_1", dict(num_classes=10, input_size=64), (2, 10)),
    ("resnet18", dict(num_classes=10, input_size=32, stem="cifar"), (2, 10)),
    ("resnet18", dict(num_classes=10, input_size=64, stem="imagenet"), (2, 10)),
    ("resnet34", dict(num_classes=10, in_channels=1, input_size=32, stem="imagenet"), (2, 10)),
    ("resnet50", dict(num_classes=10, input_size=32, stem="imagenet"), (2, 10)),
    ("unet", dict(num_classes=3, in_channels=1, input_size=32, base_width=8, depth=2),
     (2, 3, 32, 32)),
]
