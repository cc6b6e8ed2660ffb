"""Who may deposit what: the sender account, the consent, the second factor.

The frontend is not trusted, so every rule of a deposit that concerns the
sender is enforced here, after a retry of a stored request has been
answered (a retry spends no second code) and before anything is stored:

- the sender is a registered, open account, whose verified identity (not
  anything the request says) becomes the letter's sender (CPCE R.53-2);
- an LRE to a consumer needs the consumer's live consent (CPCE L.100);
- an LRE deposit carries a fresh one-time code of that account (R.53-1),
  spent in the same atomic write as the letter.
"""

from __future__ import annotations

from collections.abc import Callable
from uuid import UUID

from pli.domain.errors import FieldProblem, InvalidInput, RuleViolation
from pli.domain.values import LetterKind, Party, RecipientType
from pli.infrastructure.accounts import Consents, SenderAccounts
from pli.infrastructure.letters import Authorisation, DepositRequest

__all__ = ["DepositAuthoriser"]


class DepositAuthoriser:
    """Builds the authorisation step of each deposit."""

    def __init__(self, accounts: SenderAccounts, consents: Consents) -> None:
        self.accounts = accounts
        self.consents = consents

    def __call__(
        self, request: DepositRequest, second_factor_code: str
    ) -> Callable[[UUID], Authorisation]:
        """The check to run once the deposit is known to be new."""

        def authorise(letter_id: UUID) -> Authorisation:
            return self._authorise(request, second_factor_code, letter_id)

        return authorise

    def _authorise(
        self, request: DepositRequest, code: str, letter_id: UUID
    ) -> Authorisation:
        account = self.accounts.get(request.sender_account_id)
        account.require_open()
        recipient = request.recipient
        if request.kind is LetterKind.LRE:
            if not code:
                raise InvalidInput(
                    [
                        FieldProblem(
                            "second_factor_code",
                            "an LRE deposit needs the sender's one-time code "
                            "(CPCE R.53-1)",
                        )
                    ]
                )
            if recipient.type is RecipientType.CONSUMER and not self.consents.is_live(
                account.id, recipient.email
            ):
                raise RuleViolation(
                    "consumer-consent-required",
                    "this consumer has not consented to receive LREs from this "
                    "sender electronically (CPCE L.100); record the consent "
                    "first, or send the letter on paper",
                )
            account = self.accounts.check_totp(account.id, code, letter_id)
            return Authorisation(
                sender=Party(account.name, account.email), also_save=(account,)
            )
        return Authorisation(sender=Party(account.name, account.email))
