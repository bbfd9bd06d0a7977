"""The core layer: errors, configuration, files and the run directory, devices, torchrun.

Every other module may import these; they import nothing else of the project.
"""
