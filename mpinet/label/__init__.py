"""Labelling cells for segmentation: bootstrap masks by classical segmentation, import masks from
LabelMe and COCO exports, predict masks with a trained network. See ``python -m mpinet.label -h``.

    python -m mpinet.label bootstrap RAW_IMAGES DATA/train --tile 64   # Otsu + watershed
    python -m mpinet.label labelme LABELME_JSONS DATA/train            # corrected in LabelMe
    python -m mpinet.label coco instances.json IMAGES DATA/train
    python -m mpinet.label predict --weights unet.safetensors NEW_IMAGES MASKS_OUT
"""
