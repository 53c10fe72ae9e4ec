"""PLACEHOLDER (lead, uncommitted): replaced by the engine when it lands."""


def cpu_inference_applies(backbone, x):
    return False


def run_cpu_inference(backbone, x):
    raise NotImplementedError
