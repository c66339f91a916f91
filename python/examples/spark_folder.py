"""Detect over an image folder with Spark and write per-box rows with OOD verdicts to Parquet,
in the two UDF shapes docs/python.md describes: ``mapInArrow`` (rows out directly) and
``predict_batch_udf`` (per-image arrays, exploded afterwards). Not run by CI (pyspark and a Java
runtime are not test dependencies).

    pip install pyspark pyarrow pandas
    python python/examples/spark_folder.py --model models/shapes.safetensors \\
        --scorer models/shapes-scorer.safetensors --images assets/images --out spark-rows/

Without --master it runs Spark locally on --cpus CPUs.
"""

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
from pyspark.ml.functions import predict_batch_udf
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

import oodbox
from oodbox.ray import BoxRows, to_rows

# The per-box columns, as Spark types (what BoxRows gives with a scorer).
SCHEMA = ("image string, box_index long, x1 float, y1 float, x2 float, y2 float, class_id long, "
          "class_name string, confidence float, level long, score double, p_value double, "
          "ood_confidence double, is_ood boolean")


def map_in_arrow(images, model, scorer, cpus):
    """``mapInArrow``: batches of paths in, per-box rows out; one model per Python worker."""

    def detect_partition(batches):
        udf = BoxRows.per_process(model, scorer, threads=cpus)
        for batch in batches:
            yield pa.RecordBatch.from_pydict(udf(batch.to_pydict()))

    return images.mapInArrow(detect_partition, SCHEMA)


def predict_batch(images, model, scorer, cpus):
    """``predict_batch_udf``: one value per image (its boxes as arrays), exploded afterwards."""
    fields = [f.split(" ") for f in SCHEMA.split(", ")[1:]]  # every column but `image`

    def make_predict_fn():  # called once per Python worker
        oodbox.set_num_threads(cpus)
        detector = oodbox.OodDetector.load(model, scorer)

        def predict(paths):
            rows = to_rows(detector.detect_batch(list(paths)), np.arange(len(paths)))
            return [{name: rows[name][rows["image"] == i] for name, _ in fields} for i in range(len(paths))]

        return predict

    kinds = {"long": T.LongType(), "float": T.FloatType(), "double": T.DoubleType(),
             "string": T.StringType(), "boolean": T.BooleanType()}
    struct = T.StructType([T.StructField(name, T.ArrayType(kinds[kind])) for name, kind in fields])
    boxes = predict_batch_udf(make_predict_fn, return_type=struct, batch_size=16)
    per_image = images.withColumn("boxes", boxes("path"))
    zipped = F.arrays_zip(*(F.col("boxes")[name].alias(name) for name, _ in fields))
    return per_image.select(F.col("path").alias("image"), F.inline(zipped))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--scorer", required=True)
    p.add_argument("--images", required=True, help="folder of images (searched recursively)")
    p.add_argument("--out", required=True, help="Parquet folder; one sub-folder per UDF shape")
    p.add_argument("--master", help="a Spark master (default: local[--cpus])")
    p.add_argument("--cpus", type=int, default=2)
    a = p.parse_args()

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # local workers: this interpreter
    spark = (SparkSession.builder.master(a.master or f"local[{a.cpus}]")
             # Arrow batches of 16 images: BoxRows detects a whole batch at once.
             .config("spark.sql.execution.arrow.maxRecordsPerBatch", 16)
             .getOrCreate())
    # The CPUs of one task: Spark does not tell the Python worker, so pass it on.
    cpus = int(spark.conf.get("spark.task.cpus", "1"))
    suffixes = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
    paths = sorted(str(f) for f in Path(a.images).rglob("*") if f.suffix.lower() in suffixes)
    images = spark.createDataFrame([(p,) for p in paths], "path string").repartition(a.cpus)
    for name, shape in (("map_in_arrow", map_in_arrow), ("predict_batch_udf", predict_batch)):
        rows = shape(images, a.model, a.scorer, cpus)
        out = str(Path(a.out) / name)
        rows.write.mode("overwrite").parquet(out)
        print(f"{name}: {spark.read.parquet(out).count()} box rows from {len(paths)} images in {out}")
    spark.stop()


if __name__ == "__main__":
    main()
