"""The application, the top layer: the command line (:mod:`~robustmix.app.cli` parses,
:mod:`~robustmix.app.commands` runs), the study and its presets, the ``masks`` command.
The only code that imports ``attacks`` and ``evaluations``."""
