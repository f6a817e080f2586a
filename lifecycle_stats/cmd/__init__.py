import warnings

# oslo.messaging imports oslo.service, which imports eventlet and warns that it is deprecated.
# The agent never uses eventlet (native threads; agent.refuse_green_threads checks), so the
# banner would only mislead operators.
warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"oslo_service\..*")
