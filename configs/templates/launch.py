"""The Flex Template container's entry (FLEX_TEMPLATE_PYTHON_PY_FILE in the Dockerfile).

The launcher runs ``python launch.py --name=value ...``; this runs the pipeline that
BEAMML_TEMPLATE names (set when the image is built) with those arguments, and exits
with its code. BEAMML_LAUNCH_ONLY=1 (set in the Dockerfile) makes the pipeline submit
its Dataflow job and return without waiting for it, as a Flex launcher must.
"""
import sys

from beamml.pipelines._platform.templates import launch

if __name__ == '__main__':
    sys.exit(launch(sys.argv[1:]))
