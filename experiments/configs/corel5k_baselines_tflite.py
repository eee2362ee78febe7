r"""The Corel5k study on FINDINGS.md's feature pipeline: TFLite (XNNPACK) MobileNetV2 on the full centre square.

  python experiments/corel5k_baselines.py --config=experiments/configs/corel5k_baselines_tflite.py \
      --workdir=runs/corel5k_baselines_tflite

Features: each Corel5k image centre-cropped to its shorter side (128 x 128 of 192 x 128), bilinear resize to
224 x 224, uint8 into ``models/mobilenet_v2_1.0_224_quant`` (ai-edge-litert, XNNPACK), the 1280-d
``MobilenetV2/Logits/AvgPool`` output dequantised; arrays train / test (+ ids) in ``features_path``.  With these
features cosine 5-NN reproduces FINDINGS.md's row (per-word .320/.409/.359/155, per-image .448/.636/.526).
JEC and the most-frequent row do not depend on the CNN features and are left out.
"""


from experiments.configs import corel5k_baselines


def get_config():
    c = corel5k_baselines.get_config()
    c.features_path = "/work/cache/recommend/corel5k_mnv2_tflite_centercrop.npz"
    c.features_ready = ""
    c.methods = [m for m in c.methods if m not in ("most_frequent", "jec")]
    return c
