"""The one test harness: everything the suites and benchmarks use to start Warren's parts.

* :mod:`tests.harness.machine`: free ports, scratch dirs a sandbox can traverse, the shared
  debootstrapped ``minimal`` template cache;
* :mod:`tests.harness.cp`: the control plane, served by uvicorn either as a task on the test's
  event loop (:class:`~tests.harness.cp.InProcessCP`: the test moves its clock and drives its
  monitor) or as its own process (:class:`~tests.harness.cp.CPProcess`: what an operator runs),
  plus JWT users of an in-process CP;
* :mod:`tests.harness.agent`: :class:`~tests.harness.agent.AgentProcess`, one real
  ``warren agent`` process, standalone (insecure gRPC, for the agent's own tests) or registered
  to a control plane (mTLS, as an operator runs it);
* :mod:`tests.harness.fake_agent`: a scripted agent (any servicer, registered and served over
  the agent's mTLS) for pinning exactly what the control plane sends;
* :mod:`tests.harness.platform`: a whole live platform (CP process + registered agents);
* :mod:`tests.harness.tenant`: one team's API key with an attacker's two moves;
* :mod:`tests.harness.leaks`: what a destroyed sandbox could leave behind on the host;
* :mod:`tests.harness.fixtures`: the module-scoped ``cp``, ``platform_dir`` and ``platform``
  fixtures, loaded for every suite by ``tests/conftest.py``.
"""
