"""Custom CPU kernels, drop-in modules with the state_dict of PyTorch's: batch norm fused with the
residual add and ReLU (C++ in csrc/), and the small-map convolution weight gradient."""
