import socket

import pytest

from tests.conftest import NetworkBlockedError


def test_non_loopback_connect_is_blocked():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with pytest.raises(NetworkBlockedError):
        s.connect(("93.184.216.34", 80))
    s.close()
