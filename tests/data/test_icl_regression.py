import numpy as np
import pytest

from keras_gr.data.icl_regression import eigenvalue_range
from keras_gr.data.icl_regression import icl_regression_dataset
from keras_gr.data.icl_regression import icl_regression_problems
from keras_gr.data.icl_regression import random_rotations
from keras_gr.data.icl_regression import sample_eigenvalues


def test_shapes_layout_and_answer_slot():
    data = icl_regression_problems(7, dim=3, num_context=5, seed=1)
    assert data["prompts"].shape == (7, 6, 4)
    assert data["prompts"].dtype == np.float32
    assert data["targets"].shape == (7,)
    mask = data["answer_mask"]
    assert mask.shape == (7, 6, 4) and mask.sum() == 7
    assert np.all(mask[:, 5, 3])
    # The answer slot is hidden (zero); every other slot is the data.
    assert np.all(data["prompts"][mask] == 0.0)
    np.testing.assert_array_equal(data["prompts"][..., :3], data["inputs"])
    np.testing.assert_array_equal(
        data["prompts"][:, :5, 3], data["outputs"][:, :5]
    )
    np.testing.assert_array_equal(data["targets"], data["outputs"][:, 5])
    paper = icl_regression_problems(
        7, dim=3, num_context=5, seed=1, layout="paper"
    )
    assert paper["prompts"].shape == (7, 4, 6)
    np.testing.assert_array_equal(
        paper["prompts"], np.swapaxes(data["prompts"], 1, 2)
    )
    assert np.all(paper["answer_mask"][:, 3, 5])


@pytest.mark.parametrize("kappa", [1.0, 4.0, 100.0])
@pytest.mark.parametrize("spectrum", ["log_uniform", "uniform"])
def test_condition_number_within_bound(kappa, spectrum):
    data = icl_regression_problems(
        200,
        dim=6,
        num_context=2,
        kappa=kappa,
        spectrum=spectrum,
        seed=3,
        dtype="float64",
    )
    sigma = data["covariances"]
    np.testing.assert_allclose(sigma, np.swapaxes(sigma, 1, 2), atol=1e-12)
    eig = np.linalg.eigvalsh(sigma)
    assert eig.min() >= 1.0 / kappa * (1 - 1e-9)
    assert eig.max() <= 1.0 + 1e-9
    cond = np.linalg.cond(sigma)
    assert np.all(cond >= 1.0 - 1e-9) and np.all(cond <= kappa * (1 + 1e-9))
    # The covariance is U diag(eigenvalues) U^T with the stored eigenvalues.
    np.testing.assert_allclose(
        eig, np.sort(data["eigenvalues"], axis=-1), rtol=1e-9
    )
    if kappa > 1:
        # Diverse tasks: the condition numbers spread over the range.
        assert cond.max() > 0.5 * kappa and cond.min() < 0.9 * kappa


def test_labels_are_exact_inner_products():
    data = icl_regression_problems(50, dim=4, num_context=9, seed=5)
    x = data["inputs"].astype(np.float64)
    w = data["weights"].astype(np.float64)
    expected = np.zeros(x.shape[:2], dtype=np.float64)
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            expected[b, t] = sum(x[b, t, i] * w[b, i] for i in range(4))
    np.testing.assert_array_equal(data["outputs"], expected.astype(np.float32))


def test_seeds_reproducible_and_distinct():
    a = icl_regression_problems(20, dim=3, num_context=4, seed=11)
    b = icl_regression_problems(20, dim=3, num_context=4, seed=11)
    c = icl_regression_problems(20, dim=3, num_context=4, seed=12)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["prompts"], c["prompts"])


@pytest.mark.parametrize("prior", ["inverse_covariance", "identity"])
def test_task_and_input_distributions(prior):
    dim = 4
    data = icl_regression_problems(
        4000,
        dim=dim,
        num_context=3,
        kappa=20.0,
        task_prior=prior,
        seed=2,
        dtype="float64",
    )
    sigma, w, x = data["covariances"], data["weights"], data["inputs"]
    sigma_inv = np.linalg.inv(sigma)
    # x ~ N(0, Sigma): x^T Sigma^-1 x ~ chi2_d, mean d, variance 2d.
    q = np.einsum("bti,bij,btj->bt", x, sigma_inv, x).ravel()
    assert abs(q.mean() - dim) < 4 * np.sqrt(2 * dim / q.size)
    if prior == "inverse_covariance":
        # w ~ N(0, Sigma^-1): w^T Sigma w ~ chi2_d.
        s = np.einsum("bi,bij,bj->b", w, sigma, w)
    else:
        s = np.sum(w**2, axis=-1)
    assert abs(s.mean() - dim) < 4 * np.sqrt(2 * dim / s.size)
    # Whitened draws are isotropic (no leaked dependence on the rotation).
    if prior == "inverse_covariance":
        chol = np.linalg.cholesky(sigma)
        white = np.einsum("bji,bj->bi", chol, w)
    else:
        white = w
    cov = white.T @ white / white.shape[0]
    np.testing.assert_allclose(cov, np.eye(dim), atol=0.12)


def test_shifted_spectrum_widens_both_ends():
    assert eigenvalue_range(10.0) == (0.1, 1.0)
    lo, hi = eigenvalue_range(10.0, shift=0.5)
    np.testing.assert_allclose([lo, hi], [1 / 15.0, 1.5])
    data = icl_regression_problems(
        500,
        dim=5,
        num_context=2,
        kappa=10.0,
        shift=0.5,
        seed=0,
        dtype="float64",
    )
    eig = data["eigenvalues"]
    assert eig.min() >= lo and eig.max() <= hi
    assert (eig > 1.0).any() and (eig < 0.1).any()
    custom = icl_regression_problems(
        50, dim=2, num_context=2, spectrum_range=(2.0, 3.0), seed=0
    )
    assert custom["eigenvalues"].min() >= 2.0
    assert custom["eigenvalues"].max() <= 3.0


def test_pure_helpers():
    rng = np.random.default_rng(0)
    rot = random_rotations(rng, 30, 4)
    eye = np.einsum("bij,bkj->bik", rot, rot)
    np.testing.assert_allclose(
        eye, np.broadcast_to(np.eye(4), eye.shape), atol=1e-12
    )
    # Haar: determinants of both signs occur.
    det = np.linalg.det(rot)
    assert (det > 0).any() and (det < 0).any()
    eig = sample_eigenvalues(rng, 2000, 1, 0.01, 1.0)
    # log-uniform: log10 is uniform on [-2, 0], mean -1.
    assert abs(np.log10(eig).mean() + 1.0) < 0.05


def test_tf_dataset_matches_arrays():
    data = icl_regression_problems(10, dim=2, num_context=3, seed=4)
    ds = icl_regression_dataset(10, batch_size=4, dim=2, num_context=3, seed=4)
    batches = list(ds.as_numpy_iterator())
    assert [b[0].shape[0] for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(
        np.concatenate([b[0] for b in batches]), data["prompts"]
    )
    np.testing.assert_array_equal(
        np.concatenate([b[1] for b in batches]), data["targets"]
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_prompts": 0}, "num_prompts"),
        ({"num_prompts": 2, "dim": 0}, "dim"),
        ({"num_prompts": 2, "num_context": -1}, "num_context"),
        ({"num_prompts": 2, "kappa": 0.5}, "kappa"),
        ({"num_prompts": 2, "shift": -0.1}, "shift"),
        ({"num_prompts": 2, "task_prior": "gauss"}, "task_prior"),
        ({"num_prompts": 2, "spectrum": "flat"}, "spectrum"),
        ({"num_prompts": 2, "layout": "cols"}, "layout"),
        ({"num_prompts": 2, "spectrum_range": (0.0, 1.0)}, "spectrum_range"),
        ({"num_prompts": 2, "dtype": "int32"}, "dtype"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        icl_regression_problems(**kwargs)
