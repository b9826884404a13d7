"""License-free synthetic faces in the exact Kaggle layout (the pipeline's embedded default data).

Three steps, one module each: :mod:`~fkp.synthetic.face_model` builds a parametric 3-D face and its
15 keypoints (who a person is, how one frame shows them), :mod:`~fkp.synthetic.face_render` paints
it into a 96x96 grayscale image, and :mod:`~fkp.synthetic.sample` writes the four Kaggle CSVs (and
``groups.csv``) with Kaggle's patterns of missing labels. ``dvc.yaml``'s ``sample`` stage depends on
this whole package: a change to any step makes new data.
"""
