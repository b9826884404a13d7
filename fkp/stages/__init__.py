"""The stage entry points that ``dvc.yaml`` runs (through the ``fkp`` command line): one module per stage."""
