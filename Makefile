# The two commands of the README:  make demo  (main job on synthetic data)  and  make test.
# Both run the idempotent set-up first; it takes seconds when nothing changed.
PYTHON ?= python3.11
VENV_PY := .venv/bin/python

# The ROS-facing tests (node, messages, bags, interfaces and type hashes, ros_compat, transport, launch parameters)
# also run against ROS 2 Jazzy, in .venv-jazzy (vehicles run Humble/Jazzy; .venv is Kilted): make test-jazzy.
VENV_JAZZY_PY := .venv-jazzy/bin/python
ROS_TESTS := test/test_interfaces.py test/test_ros_convert.py test/test_ros_compat.py test/test_ros_transport.py \
	test/test_node_messages.py test/test_node_calibration.py test/test_node_ros.py test/test_node_params.py \
	test/test_node_startup.py test/test_node_bad_inputs.py test/test_node_inference.py test/test_node_policies.py \
	test/test_node_vehicle_defaults.py test/test_node_bag_loop.py test/test_temporal_live.py \
	test/test_bag_roundtrip.py test/test_bag_live.py test/test_launch_file.py test/test_import_isolation.py \
	test/test_reception_gate.py

.PHONY: setup test demo bench clean-venv setup-jazzy test-jazzy

setup:
	@$(PYTHON) tools/setup_env.py

test: setup
	@$(VENV_PY) -m ruff check .
	@$(VENV_PY) -m pytest -n 2 --dist loadfile -q test

setup-jazzy:
	@$(PYTHON) tools/setup_env.py --ros jazzy

test-jazzy: setup-jazzy
	@$(VENV_JAZZY_PY) -m pytest -n 2 --dist loadfile -q $(ROS_TESTS)

demo: setup
	@$(VENV_PY) -m labeldistill_training.demo

bench: setup
	@$(VENV_PY) bench/run_all.py

clean-venv:
	rm -rf .venv
