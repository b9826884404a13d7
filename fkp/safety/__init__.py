"""What keeps a step safe when it is killed or fed hostile input.

* :mod:`~fkp.safety.owner`: which process (pid, host, start time) owns a run or a temporary;
* :mod:`~fkp.safety.leftovers`: remove the temporaries of dead processes, stop cleanly on signals;
* :mod:`~fkp.safety.stale_runs`: close the MLflow runs that killed processes left RUNNING;
* :mod:`~fkp.safety.swap`: replace a whole folder at once (multi-file outputs);
* :mod:`~fkp.safety.image_header`: refuse decompression bombs before decoding a photo;
* :mod:`~fkp.safety.archives`: extract zips with limits on names, member count, size and ratio;
* :mod:`~fkp.safety.relocate`: keep a copied project's MLflow artifacts inside the copy;
* :mod:`~fkp.safety.messages`: one line per known failure, for the command line.

Nothing here imports TensorFlow, and MLflow only inside the functions that talk to a store.
"""
