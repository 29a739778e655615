"""TensorBoard panels of training runs: what a task's model predicts, drawn for a person.

Panels read a batch and the model's predictions and draw them with ``utils.visualize``;
detection and matching go through the same functions as the models and evaluations
(``models.superpoint.detect``, ``geometry.matching``, ``geometry.homography``), so a panel
shows what the model's configuration gives, not a re-implementation of it.
"""
