"""Deployment: systemd units, install/uninstall into a root, and how training bursts launch.

``trainer_launch`` (pure) and ``trainer_probe`` are what the daemon uses at run time; the rest
is what ``mobizo-agent install`` / ``uninstall`` use. Nothing here imports torch.
"""
