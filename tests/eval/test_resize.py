"""``--resize`` (EmbeddingStore(resize=True)): faces of another size are resized (PIL bilinear) before the model,
as a student trained at a lower resolution needs; without it they are refused."""
import io

import numpy as np
import pytest
from PIL import Image

from insightface_pwr.data.errors import DataFileError
from insightface_pwr.eval.embedding_store import EmbeddingStore


def _png(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_resize_equals_resizing_first():
    rng = np.random.default_rng(0)
    faces = [rng.integers(0, 256, (112, 112, 3), dtype=np.uint8) for _ in range(3)]
    model = lambda x: x.reshape(len(x), -1)[:, :40].float().numpy()  # noqa: E731  (the pixels themselves)
    plain, flip = EmbeddingStore(model, 56, progress=False, resize=True).embed([_png(f) for f in faces])
    small = [np.asarray(Image.fromarray(f).resize((56, 56), Image.BILINEAR)) for f in faces]
    ref_plain, ref_flip = EmbeddingStore(model, 56, progress=False).embed([_png(f) for f in small])
    assert np.array_equal(plain, ref_plain) and np.array_equal(flip, ref_flip)
    with pytest.raises(DataFileError, match="expected 56x56"):
        EmbeddingStore(model, 56, progress=False).embed([_png(faces[0])])
