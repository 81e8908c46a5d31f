"""Class-cluster agreement (ClassAMI: Musgrave, Belongie & Lim, "Three new validators and a
large-scale benchmark ranking for unsupervised domain adaptation", 2022): the adjusted mutual
information between a k-means clustering of the target features into K clusters and the
classes the model predicts. High when the model's classes are the groups its own features
form on the target; a collapsed model, whose one class cuts across every cluster, scores
about 0. k-means seeded (one start) on the L2-normalised features, randomly projected to 64
dimensions (validators.projected): the same features give the same score."""

from __future__ import annotations

from transferlab.validators import Validator, View, projected, sklearn_threads


def score(view: View) -> float:
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_mutual_info_score

    features, k = view.target_features, view.target.shape[1]
    if features is None or len(features) <= k:  # too few images for k clusters
        return float("nan")
    with sklearn_threads():
        clusters = KMeans(k, n_init=1, random_state=0).fit_predict(projected(features))
    return float(adjusted_mutual_info_score(view.target.argmax(1).cpu().numpy(), clusters))


VALIDATORS = (Validator("cluster", "ClassAMI", "predicted classes that match the target's own "
                        "feature clusters", "Musgrave et al. 2022", "O(n D K) a k-means step",
                        score),)
