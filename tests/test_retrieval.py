"""Retrieval metrics: the multi-caption protocol, tie-breaking, chunking."""

import numpy as np
import pytest

from jclip.evaluation.retrieval import QuerybankNorm, retrieval_metrics, retrieval_ranks


def _brute_force_ranks(img, txt, text_to_image):
  """Direct definition: sort every row (stable, so earlier indices win ties) and look up."""
  sims = img @ txt.T
  t2i = np.array(
    [
      int(np.where(np.argsort(-sims[:, m], kind="stable") == text_to_image[m])[0][0])
      for m in range(len(txt))
    ]
  )
  i2t = np.array(
    [
      min(
        int(np.where(np.argsort(-sims[n], kind="stable") == m)[0][0])
        for m in np.where(text_to_image == n)[0]
      )
      for n in range(len(img))
    ]
  )
  return i2t, t2i


def test_hand_worked_example():
  img = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
  # captions 0, 1 belong to image 0; caption 2 to image 1.
  txt = np.array([[0.0, 1.0], [0.8, 0.6], [0.6, 0.8]], np.float32)
  i2t, t2i = retrieval_ranks(img, txt, np.array([0, 0, 1]))
  # image 0 scores captions (0, .8, .6): its caption 1 is first.  image 1: (1, .6, .8): caption 2
  # is second behind caption 0.
  np.testing.assert_array_equal(i2t, [0, 1])
  # caption 0 scores images (0, 1): its image 0 is second; caption 1 (.8, .6) first;
  # caption 2 (.6, .8) first.
  np.testing.assert_array_equal(t2i, [1, 0, 0])
  metrics = retrieval_metrics(img, txt, np.array([0, 0, 1]), ks=(1,))
  assert metrics["i2t_r1"] == 0.5 and metrics["t2i_r1"] == pytest.approx(2 / 3)
  assert metrics["i2t_mean_rank"] == 1.5 and metrics["t2i_median_rank"] == 1.0
  assert metrics["rsum"] == pytest.approx(0.5 + 2 / 3)  # the recalls of both directions, added


def test_ties_are_broken_by_index_deterministically():
  img = np.ones((4, 3), np.float32)  # every image identical: every score ties
  txt = np.ones((4, 3), np.float32)
  i2t, t2i = retrieval_ranks(img, txt, np.arange(4))
  np.testing.assert_array_equal(t2i, [0, 1, 2, 3])
  np.testing.assert_array_equal(i2t, [0, 1, 2, 3])


@pytest.mark.parametrize("chunk_size", [1, 7, 1000])
def test_chunked_equals_unchunked_and_brute_force(chunk_size):
  rng = np.random.default_rng(0)
  img = rng.normal(size=(30, 8)).astype(np.float32)
  txt = rng.normal(size=(150, 8)).astype(np.float32)
  txt[::9] = img[np.arange(150)[::9] // 5]  # some exact matches and duplicated scores
  text_to_image = np.repeat(np.arange(30), 5)
  rng.shuffle(text_to_image)  # captions need not be grouped by image
  expected = _brute_force_ranks(img, txt, text_to_image)
  for got, want in zip(retrieval_ranks(img, txt, text_to_image, chunk_size), expected, strict=True):
    np.testing.assert_array_equal(got, want)
  assert retrieval_metrics(img, txt, text_to_image, chunk_size=chunk_size) == retrieval_metrics(
    img, txt, text_to_image, chunk_size=10_000
  )


def test_bad_caption_mapping_is_rejected():
  img, txt = np.eye(3, dtype=np.float32), np.eye(3, dtype=np.float32)
  with pytest.raises(ValueError, match="image index"):
    retrieval_ranks(img, txt, np.array([0, 1, 3]))
  with pytest.raises(ValueError, match="at least one caption"):
    retrieval_ranks(img, txt, np.array([0, 1, 1]))


@pytest.mark.parametrize("which", ["image", "caption"])
def test_non_finite_embeddings_are_refused(which):
  """NaN compares false with everything: unchecked, NaN embeddings would score R@1 = 1."""
  rng = np.random.default_rng(0)
  img, txt = rng.normal(size=(3, 4)), rng.normal(size=(6, 4))
  (img if which == "image" else txt)[1, 2] = np.nan
  total = {"image": 3, "caption": 6}[which]
  with pytest.raises(ValueError, match=f"1 of the {total} {which} embeddings are not finite"):
    retrieval_metrics(img, txt, np.repeat(np.arange(3), 2))


def _unit(rows):
  rows = np.asarray(rows, np.float32)
  return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_querybank_normalisation_demotes_a_hub():
  """Gallery item 0 is a hub, close to every bank query; item 1 is what the test query asks for,
  but the hub scores higher. Normalised, item 1 ranks first; a query whose best item no bank query
  ranks first keeps its plain scores."""
  gallery_GD = _unit([[1, 1, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
  bank_BD = _unit([[1, 0.2, 0.9, 0], [0.9, 0.1, 1, 0], [1, 1, 0.9, 0]])
  norm = QuerybankNorm.from_bank(bank_BD, gallery_GD, beta=20.0)
  np.testing.assert_array_equal(norm.active_G, [True, False, False])
  expected_log_z_G = np.logaddexp.reduce(20.0 * bank_BD @ gallery_GD.T, axis=0)
  np.testing.assert_allclose(norm.log_z_G, expected_log_z_G, rtol=1e-5)
  query_QD = _unit([[0.6, 1, 0.6, 0], [0, 0, 0.1, 1]])
  plain_QG = query_QD @ gallery_GD.T
  assert np.argmax(plain_QG[0]) == 0  # the hub wins the plain ranking
  normalised_QG = norm(plain_QG)
  assert np.argmax(normalised_QG[0]) == 1
  np.testing.assert_array_equal(normalised_QG[1], plain_QG[1])  # best item 2: inactive


def test_a_bank_in_chunks_equals_one_pass():
  rng = np.random.default_rng(1)
  bank_BD, gallery_GD = _unit(rng.normal(size=(50, 6))), _unit(rng.normal(size=(9, 6)))
  whole = QuerybankNorm.from_bank(bank_BD, gallery_GD, chunk_size=1000)
  chunked = QuerybankNorm.from_bank(bank_BD, gallery_GD, chunk_size=7)
  np.testing.assert_allclose(chunked.log_z_G, whole.log_z_G, rtol=1e-6)
  np.testing.assert_array_equal(chunked.active_G, whole.active_G)


def test_normalised_retrieval_ranks_the_normalised_scores():
  """The ranks of the normalised figures are those of the normalised score matrices, in both
  directions."""
  rng = np.random.default_rng(2)
  img, txt = _unit(rng.normal(size=(12, 5))), _unit(rng.normal(size=(24, 5)))
  text_to_image = np.repeat(np.arange(12), 2)
  i2t_norm = QuerybankNorm.from_bank(_unit(rng.normal(size=(40, 5))), txt)
  t2i_norm = QuerybankNorm.from_bank(_unit(rng.normal(size=(40, 5))), img)
  i2t, t2i = retrieval_ranks(img, txt, text_to_image, 5, i2t_norm=i2t_norm, t2i_norm=t2i_norm)
  t2i_scores = t2i_norm(txt @ img.T)
  want_t2i = [
    np.sum(row > row[text_to_image[m]]) + np.sum(row[: text_to_image[m]] == row[text_to_image[m]])
    for m, row in enumerate(t2i_scores)
  ]
  np.testing.assert_array_equal(t2i, want_t2i)
  i2t_scores = i2t_norm(img @ txt.T)
  best = [
    np.flatnonzero(text_to_image == n)[np.argmax(i2t_scores[n, text_to_image == n])]
    for n in range(12)
  ]
  np.testing.assert_array_equal(
    i2t, [np.sum(i2t_scores[n] > i2t_scores[n, b]) for n, b in enumerate(best)]
  )
  plain = retrieval_ranks(img, txt, text_to_image)
  assert not all(np.array_equal(a, b) for a, b in zip((i2t, t2i), plain, strict=True))
