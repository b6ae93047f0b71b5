"""cf-compile: a torch.compile backend fusing decoder blocks into cluster kernels."""
