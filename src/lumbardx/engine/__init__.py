"""Training engine: recipes, augmentation, data loading, training loop, evaluation.

Entry points: :func:`lumbardx.engine.trainer.train`, :func:`lumbardx.engine.evaluate.evaluate`,
:func:`lumbardx.engine.evaluate.predict`, :func:`lumbardx.engine.recipes.recipe_for`.
Modules: ``recipes`` (typed per-model recipes), ``schedule`` (warm-up + lr schedules), ``optim``
(SGD parameter groups), ``ema``, ``augment`` / ``mosaic`` / ``letterbox`` / ``pipeline``
(augmentation), ``sampler`` / ``loader`` (repeat-factor sampling, batches, multi-scale),
``checkpoint`` (atomic save, exact resume, partial weights), ``distributed`` (torchrun DDP),
``metrics`` / ``plots`` / ``evaluate`` (pycocotools AP, PR curves, confusion matrix).
"""
