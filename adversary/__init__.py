"""The adversary: the tap and traffic log, roles, the attack engine, malicious servers, evaluation."""
