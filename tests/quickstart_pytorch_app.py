"""Flower's quickstart-pytorch ClientApp (examples/quickstart-pytorch in Flower's
repository), for the drop-in tests: its model, train/test functions and
handlers as Flower ships them, with two changes a test needs:

* ``load_data`` serves offline random data of CIFAR-10's shape (3x32x32
  images, 10 labels; 64 training and 16 validation examples per partition,
  seeded by the partition id) instead of downloading CIFAR-10;
* the train reply carries one more line, ``label-hist`` (the per-class counts
  FedDisco needs);
* the evaluate reply has the quickstart's loss and accuracy, not its top-3 and
  per-class accuracies (random labels make them noise).

``flwr run`` fills ``context.run_config`` from the app's pyproject
(``batch-size``, ``local-epochs``); ``run_simulation`` and fedagg's in-process
grid leave it empty, so the handlers get the quickstart's values through
``pyproject_run_config``, a mod of the test's own.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch.utils.data import DataLoader, Dataset

NUM_CLASSES = 10
RUN_CONFIG = {"batch-size": 32, "local-epochs": 1}


def pyproject_run_config(msg: Message, context: Context, call_next):  # noqa: ANN001, ANN201
    """The handlers see the quickstart's run config (Flower's runtime forbids changing the node's own Context's)."""
    ctx = Context(run_id=context.run_id, node_id=context.node_id, node_config=context.node_config,
                  state=context.state, run_config={**RUN_CONFIG, **context.run_config})
    return call_next(msg, ctx)


class Net(nn.Module):
    """Model (simple CNN adapted from 'PyTorch: A 60 Minute Blitz')"""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.view(-1, 16 * 5 * 5)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class _Images(Dataset):
    """Batches as the quickstart's transformed FederatedDataset gives them: {"img", "label"}."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = torch.from_numpy(x), torch.from_numpy(y)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"img": self.x[i], "label": self.y[i]}


def load_data(partition_id: int, num_partitions: int, batch_size: int):  # noqa: ANN201
    """Random CIFAR-10-shaped data for one partition: 80% train, 20% validation."""
    g = np.random.default_rng(1000 + int(partition_id))
    x = g.uniform(-1.0, 1.0, size=(80, 3, 32, 32)).astype(np.float32)
    y = g.integers(0, NUM_CLASSES, size=80).astype(np.int64)
    train = _Images(x[:64], y[:64])
    val = _Images(x[64:], y[64:])
    gen = torch.Generator().manual_seed(int(partition_id))
    return DataLoader(train, batch_size=batch_size, shuffle=True, generator=gen), DataLoader(val, batch_size=batch_size)


def train_fn(net, trainloader, epochs, lr, device):  # noqa: ANN001, ANN201
    """Train the model on the training set."""
    net.to(device)
    criterion = torch.nn.CrossEntropyLoss().to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    net.train()
    running_loss = 0.0
    for _ in range(epochs):
        for batch in trainloader:
            images = batch["img"].to(device)
            labels = batch["label"].to(device)
            optimizer.zero_grad()
            loss = criterion(net(images), labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
    return running_loss / len(trainloader)


def test_fn(net, testloader, device):  # noqa: ANN001, ANN201
    """Validate the model on the test set."""
    net.to(device)
    criterion = torch.nn.CrossEntropyLoss()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for batch in testloader:
            images = batch["img"].to(device)
            labels = batch["label"].to(device)
            outputs = net(images)
            loss += criterion(outputs, labels).item()
            correct += (torch.max(outputs.data, 1)[1] == labels).sum().item()
    return loss / len(testloader), correct / len(testloader.dataset)


def make_app(*mods) -> ClientApp:  # noqa: ANN002
    """The quickstart's ClientApp, with Flower mods (e.g. fixedclipping_mod) after the run-config one."""
    app = ClientApp(mods=[pyproject_run_config, *mods])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        """Train the model on local data."""
        torch.set_num_threads(1)
        model = Net()
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
        model.to(device)
        partition_id = context.node_config["partition-id"]
        num_partitions = context.node_config["num-partitions"]
        batch_size = context.run_config["batch-size"]
        trainloader, _ = load_data(partition_id, num_partitions, batch_size)
        train_loss = train_fn(model, trainloader, context.run_config["local-epochs"], msg.content["config"]["lr"],
                              device)
        model_record = ArrayRecord(model.state_dict())
        metrics = {
            "train_loss": train_loss,
            "num-examples": len(trainloader.dataset),
        }
        metrics["label-hist"] = np.bincount(trainloader.dataset.y.numpy(), minlength=NUM_CLASSES).tolist()  # the one line
        metric_record = MetricRecord(metrics)
        content = RecordDict({"arrays": model_record, "metrics": metric_record})
        return Message(content=content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        """Evaluate the model on local data."""
        torch.set_num_threads(1)
        model = Net()
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
        model.to(device)
        partition_id = context.node_config["partition-id"]
        num_partitions = context.node_config["num-partitions"]
        batch_size = context.run_config["batch-size"]
        _, valloader = load_data(partition_id, num_partitions, batch_size)
        eval_loss, eval_acc = test_fn(model, valloader, device)
        metrics = {"eval_loss": eval_loss, "eval_acc": eval_acc, "num-examples": len(valloader.dataset)}
        metric_record = MetricRecord(metrics)
        content = RecordDict({"metrics": metric_record})
        return Message(content=content, reply_to=msg)

    return app


app = make_app()
