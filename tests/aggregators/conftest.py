"""Tiny tensors only: one torch thread avoids oversubscribing shared CPUs
(with 2 threads on a busy 2-core box FedLAW's small Adam loops ran 40× slower)."""
import torch

torch.set_num_threads(1)
