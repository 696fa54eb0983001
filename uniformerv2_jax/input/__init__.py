"""The video input pipeline: DMVR-format TFRecords, official sampling and augmentation."""
