"""The MLflow pyfunc for a slicesr model directory, logged as code (MLflow "models from code"): the
registered model holds this file and the model directory (safetensors weights + config), no pickle.

predict: normalised slices (n, rows, cols), float32 -> (K*(n-1)+1, rows, cols), K = the model's K.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class SlicesrModel(PythonModel):
    def load_context(self, context) -> None:
        from slicesr.inference import load_method

        folder = Path(context.artifacts["model_dir"])
        self.method = load_method(str(folder))
        self.k = int(self.method.trained_k or json.loads((folder / "metadata.json").read_text())["k"])

    def predict(self, context, model_input, params=None):
        slices = np.asarray(model_input, dtype=np.float32)
        if slices.ndim != 3:
            raise ValueError(f"expected normalised slices (n, rows, cols), got shape {slices.shape}")
        return self.method.upsample(slices, self.k)


mlflow.models.set_model(SlicesrModel())
