"""The PyTorch peer: nn.RNN + nn.Linear + cross_entropy(reduction="sum"), autograd.

The usual way to write this model in PyTorch, holding the same parameters as
an rnn_ext model (U -> weight_ih_l0, W -> weight_hh_l0, b -> bias_ih_l0 with
bias_hh_l0 = 0, V and c -> the Linear layer).  Integer input ids become a
one-hot float tensor (T, B, D) once, outside the timed calls, since nn.RNN
takes float input; targets become an int64 tensor once.

    peer = TorchPeer(params, x, y)
    peer.forward()        # h, probs, h_last, no autograd
    peer.grad_V()         # loss, dV, dc: autograd through the Linear layer only
    peer.loss_and_grad()  # loss, {"U","W","V","b","c"}: full autograd
"""

import numpy as np
import torch
import torch.nn.functional as F


class TorchPeer:
    def __init__(self, params, x, y):
        U, W, V = params["U"], params["W"], params["V"]
        H, D = U.shape
        K = V.shape[0]
        self.K = K
        self.rnn = torch.nn.RNN(D, H, nonlinearity="tanh", bias=True)
        self.lin = torch.nn.Linear(H, K)
        with torch.no_grad():
            self.rnn.weight_ih_l0.copy_(torch.from_numpy(np.asarray(U, np.float32)))
            self.rnn.weight_hh_l0.copy_(torch.from_numpy(np.asarray(W, np.float32)))
            self.rnn.bias_ih_l0.copy_(torch.from_numpy(np.asarray(params["b"], np.float32)))
            self.rnn.bias_hh_l0.zero_()
            self.lin.weight.copy_(torch.from_numpy(np.asarray(V, np.float32)))
            self.lin.bias.copy_(torch.from_numpy(np.asarray(params["c"], np.float32)))
        self.x = F.one_hot(torch.from_numpy(np.asarray(x, np.int64)), D).float()
        self.y = torch.from_numpy(np.asarray(y, np.int64)).reshape(-1)

    def _zero_grad(self):
        for module in (self.rnn, self.lin):
            for param in module.parameters():
                param.grad = None

    def forward(self):
        with torch.no_grad():
            h, h_last = self.rnn(self.x)
            probs = torch.softmax(self.lin(h), dim=-1)
        return h, probs, h_last[0]

    def grad_V(self):
        self._zero_grad()
        with torch.no_grad():
            h, _ = self.rnn(self.x)
        loss = F.cross_entropy(self.lin(h).reshape(-1, self.K), self.y, reduction="sum")
        loss.backward()
        return loss.item(), self.lin.weight.grad, self.lin.bias.grad

    def loss_and_grad(self):
        self._zero_grad()
        h, _ = self.rnn(self.x)
        loss = F.cross_entropy(self.lin(h).reshape(-1, self.K), self.y, reduction="sum")
        loss.backward()
        grads = {
            "U": self.rnn.weight_ih_l0.grad,
            "W": self.rnn.weight_hh_l0.grad,
            "V": self.lin.weight.grad,
            "b": self.rnn.bias_ih_l0.grad,
            "c": self.lin.bias.grad,
        }
        return loss.item(), grads
