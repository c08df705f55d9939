# cxrad on a CUDA PyTorch runtime. Build: docker build -t cxrad .
# Run:   docker run --gpus all -v $PWD/data:/data -v $PWD/work:/work cxrad run /data/config.toml --workdir /work
# The package set is exactly pyproject.toml's (the project and its `dicom` extra); torch comes
# from the base image and satisfies the project's torch range.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    CXRAD_NO_PROGRESS=1 \
    CXRAD_HOME=/work

WORKDIR /opt/cxrad
COPY pyproject.toml README.md ./
COPY cxrad ./cxrad
COPY sample_data ./sample_data
COPY workflows ./workflows
RUN pip install ".[dicom]"

WORKDIR /work
ENTRYPOINT ["cxrad"]
CMD ["--help"]
